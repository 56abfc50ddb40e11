from lipoframe.cli import main

raise SystemExit(main())
