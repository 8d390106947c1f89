from vitsweep.cli import main

main()
