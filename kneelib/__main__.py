from kneelib.cli import main

raise SystemExit(main())
