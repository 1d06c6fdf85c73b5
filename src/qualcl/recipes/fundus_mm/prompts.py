"""Class prompts for zero-shot grading: class name + definition, several phrasings per class (FLAIR-style).

Each class has a name (the words a caption uses) and a short clinical definition; the prompts are
the name alone, the name in a sentence, and the name with its definition. A class's text
embedding is the mean of its prompts' L2-normalised embeddings, normalised again (CLIP's prompt
ensembling). The definitions follow the ICDR scale for DR (Wilkinson et al., Ophthalmology 2003)
and the usual clinical descriptions for the other classes; they are qualcl's, written down here
so that they can be audited.
"""

from __future__ import annotations

from qualcl.data.synthetic.grading import GRADE_NAMES

__all__ = ["CLASS_DEFINITIONS", "TEMPLATES", "class_prompts"]

#: Phrasings of a prompt: ``{name}`` and ``{definition}`` are filled in.
TEMPLATES: tuple[str, ...] = (
    "{name}",
    "fundus photograph of an eye with {name}",
    "{name}: {definition}",
)

_DR_DEFINITIONS = (
    "no abnormalities of the retina",
    "microaneurysms only",
    "microaneurysms with haemorrhages or hard exudates, less than severe",
    "many haemorrhages in all four quadrants, venous beading or intraretinal microvascular abnormalities",
    "neovascularisation or vitreous or preretinal haemorrhage",
)

#: ``{dataset: [(class name, definition), ...]}`` in class-id order.
CLASS_DEFINITIONS: dict[str, list[tuple[str, str]]] = {
    "dr": list(zip(GRADE_NAMES, _DR_DEFINITIONS, strict=True)),
    "odir": [
        ("normal fundus", "a healthy retina, optic disc and macula"),
        ("diabetic retinopathy", "microaneurysms, haemorrhages and exudates from diabetes"),
        ("glaucoma", "an enlarged optic cup with a thinned neuroretinal rim"),
        ("cataract", "a hazy, blurred view of the retina through a clouded lens"),
        ("age-related macular degeneration", "drusen and pigment changes at the macula"),
        ("hypertensive retinopathy", "narrowed arteries, arteriovenous nicking and flame haemorrhages"),
        ("pathological myopia", "a tilted disc, peripapillary atrophy and a thin, tessellated fundus"),
        ("other fundus abnormality", "a retinal finding outside the other categories"),
    ],
    "fives": [
        ("normal fundus", "a healthy retina and vessel tree"),
        ("diabetic retinopathy", "microaneurysms, haemorrhages and exudates from diabetes"),
        ("glaucoma", "an enlarged optic cup with a thinned neuroretinal rim"),
        ("age-related macular degeneration", "drusen and pigment changes at the macula"),
    ],
}


def class_prompts(dataset: str) -> list[list[str]]:
    """The prompts of each class of ``dataset`` (``"dr"``, ``"odir"`` or ``"fives"``), in class-id order.

    Examples:
        >>> class_prompts("dr")[2][0]
        'moderate non-proliferative diabetic retinopathy'
        >>> len(class_prompts("fives")), len(class_prompts("fives")[0])
        (4, 3)
    """
    if dataset not in CLASS_DEFINITIONS:
        raise ValueError(f"no class prompts for {dataset!r}; choose one of {sorted(CLASS_DEFINITIONS)}")
    return [[t.format(name=n, definition=d) for t in TEMPLATES] for n, d in CLASS_DEFINITIONS[dataset]]
