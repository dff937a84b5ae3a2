from biasprune.cli import main

main()
