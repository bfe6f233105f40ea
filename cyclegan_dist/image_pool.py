"""History of generated images for the discriminator update (Shrivastava et al.; the reference ImagePool).

Until the pool is full every image is stored and returned unchanged; after that, with probability 0.5 an
image is swapped for a random stored one (which is returned instead). One pool per rank and domain.
The pool draws from its own ``torch.Generator`` so its choices are checkpointed and resume exactly.
"""

from __future__ import annotations

import torch


class ImagePool:
    def __init__(self, pool_size: int, seed: int = 0) -> None:
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch of the same shape: a mix of the given (detached) images and older ones."""
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if torch.rand((), generator=self.generator).item() > 0.5:
                index = int(torch.randint(0, self.pool_size, (), generator=self.generator))
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        stored = torch.cat(self.images, 0).cpu() if self.images else torch.empty(0)
        return {"pool_size": self.pool_size, "images": stored, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.pool_size = int(state["pool_size"])
        self.images = [image.unsqueeze(0).to(device) for image in state["images"]] if state["images"].numel() else []
        self.generator.set_state(state["generator"])
