from unmask.cli.main import main

raise SystemExit(main())
