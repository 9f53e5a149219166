from bbn.cli import main

raise SystemExit(main())
