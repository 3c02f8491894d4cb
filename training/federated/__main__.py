"""``python -m training.federated {server,client,local}``: see :mod:`training.federated.launch`."""

import sys

from training.federated.launch import main

sys.exit(main())
