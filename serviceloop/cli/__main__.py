import sys

from serviceloop.cli import main

sys.exit(main())
