"""The live avtca app: camera and microphone in, emotion probabilities out. Never imports torch."""
