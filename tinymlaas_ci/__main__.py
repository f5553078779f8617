import sys

from tinymlaas_ci.cli.main import main

sys.exit(main())
