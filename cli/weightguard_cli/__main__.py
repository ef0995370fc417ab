from weightguard_cli.main import main

main()
