"""sae-kit: sparse-autoencoder interpretability for language models.

Stages (one module each): models / corpus / hooks -> harvest -> store -> autoencoders / train
-> evaluate -> analysis -> dashboard -> steering. Every stage reads the previous stage's
directory and writes its own (safetensors + JSON, no pickle).
"""

__version__ = "0.1.0"
