"""Learning straight from preferences: DPO and its kin (cDPO, IPO, SLiC's hinge, KTO), no reward model."""
