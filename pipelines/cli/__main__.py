import sys

from duchkit.pipelines.cli import main

sys.exit(main())
