"""The gRPC interface (crypto.CryptoService) over the API's operations; stubs generated from protos/."""
