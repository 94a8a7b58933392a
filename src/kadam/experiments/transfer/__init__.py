"""Report slice: do the transfer rules of THEORY §6 (kadam.transfer) hold in discrete training?"""
