"""The sans-IO market core: price curve, order book and the embedded market. No clocks, sockets
or files in here: time comes in as an argument."""
