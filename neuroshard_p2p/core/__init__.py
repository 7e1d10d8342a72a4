"""The sans-IO market core: price curve, order book and the embedded market. No sockets or files
in here, and no clock except in `InferenceMarket`, which reads the one it is given (the seed's API
takes no times): pricing and the book take time as an argument."""
