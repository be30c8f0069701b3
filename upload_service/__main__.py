from upload_service.cli import main

raise SystemExit(main())
