"""Image–text self-supervision for fundus images: contrastive, masked-image and caption objectives with fusion."""
