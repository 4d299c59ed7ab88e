"""`python -m mcp_hub` is the `mcp-hub` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
