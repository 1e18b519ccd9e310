from stream_ae.cli import main

raise SystemExit(main())
