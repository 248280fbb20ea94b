from coordconv.cli import main

raise SystemExit(main())
