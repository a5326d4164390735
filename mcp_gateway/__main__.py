from mcp_gateway.cli.app import main

main()
