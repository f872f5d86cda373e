from anomaly.cli import main

raise SystemExit(main())
