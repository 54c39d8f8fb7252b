"""The local stack: VisionTrack on one machine with no containers (`make up`), and the test harness's servers."""
