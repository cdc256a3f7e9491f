from vmlab.cli import main

main()
