from cyclegan_dist.cli import main

raise SystemExit(main())
