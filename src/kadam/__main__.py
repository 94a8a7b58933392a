import sys

from kadam.cli import main

sys.exit(main())
