"""``pacs-bridge`` entry point: not built yet, says so and exits non-zero."""

import sys


def main() -> None:
    """Report that the bridge is not part of this release."""
    print("pacs-bridge: not implemented yet (see the PACS bridge issue)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
