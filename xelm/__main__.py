from xelm.app.cli import main

raise SystemExit(main())
