import sys

from slirpy.cli.main import main

sys.exit(main())
