from widedeep.cli import main

raise SystemExit(main())
