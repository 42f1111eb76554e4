"""The image's HEALTHCHECK: exit 0 when GET /healthz on this container's port answers 200.

Python's standard library only (the slim image has no curl); the port is the server's own SM1_PORT.
/healthz answers 503 while the server drains, so a draining container reads as unhealthy.
"""

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0  # below the HEALTHCHECK --timeout, so a hung server gives a message, not a kill


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('SM1_PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            print(response.read(200).decode(errors="replace"))
            return 0
    except (urllib.error.URLError, OSError) as e:
        print(f"{url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
