from crossway.cli import main

raise SystemExit(main())
