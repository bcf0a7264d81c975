from lmrec.cli import main

raise SystemExit(main())
