"""What Omniglot is: its character count, images per character and the class splits of the two
protocols. A leaf module (no imports) so that the dataset's config can check tasks against it
without loading the dataset code."""

NUM_CLASSES = 1623
IMAGES_PER_CLASS = 20
# [train, val, test] characters. mamlpp: all characters pooled, a random k*90 rotation per class
# per task; maml: Finn et al.'s split, each rotation its own class.
PROTOCOL_SPLITS = {"mamlpp": (1150, 50, 423), "maml": (1100, 100, 423)}
PROTOCOLS = tuple(PROTOCOL_SPLITS)
# Classes a task draws from per character: under 'maml' each of the 4 rotations is a class.
CLASSES_PER_CHARACTER = {"mamlpp": 1, "maml": 4}
