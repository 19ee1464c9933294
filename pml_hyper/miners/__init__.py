"""PML miners."""

from .reciprocal_triplet_miner import ReciprocalTripletMiner

__all__ = ["ReciprocalTripletMiner"]
