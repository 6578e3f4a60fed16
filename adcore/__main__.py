from adcore.cli import main

raise SystemExit(main())
