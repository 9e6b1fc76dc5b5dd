"""PACS bridge (DICOM C-STORE receiver, query/retrieve, de-identification).

An empty shell in the spine; the bridge itself is built in a later issue.
"""

__version__ = "0.1.0"
