"""``python -m eca_deploy`` runs the ``eca-deploy`` CLI."""

import sys

from eca_deploy.cli.main import main

sys.exit(main())
