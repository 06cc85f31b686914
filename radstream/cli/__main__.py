from radstream.cli.main import main

main()
