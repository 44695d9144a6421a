import sys

from lvmlt.cli import main

sys.exit(main())
