from distft.cli import main

main()
