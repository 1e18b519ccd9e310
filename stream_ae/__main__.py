from stream_ae.cli.app import main

raise SystemExit(main())
