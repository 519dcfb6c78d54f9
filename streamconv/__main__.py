from streamconv.cli import main

raise SystemExit(main())
