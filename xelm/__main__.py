from xelm.cli import main

raise SystemExit(main())
