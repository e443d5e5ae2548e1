from phiquant.cli import main

raise SystemExit(main())
