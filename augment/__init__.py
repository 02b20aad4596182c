"""What changes one sample: caption rules, back-translation, image transforms.

Pure functions and classes over batches of captions or images; no file I/O, and no imports from
`pipelines` or `hashing`, so this package is usable as a library on its own.
"""
