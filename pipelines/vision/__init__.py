"""The vision job: videos and images -> vision records of 256 VQGAN codes per frame.

``job`` (flags, run), ``driver`` (plan, resume, summary), ``graph`` (the Beam graph), ``steps``
(decode, tokenize, assemble), ``output`` (records, resume state), ``decode*`` (decord, ffmpeg,
isolation), ``inputs`` (globs, manifests, sidecars), ``preview``, ``vqgan_handler`` (RunInference).
"""
