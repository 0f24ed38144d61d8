"""rag-chat: answers questions from the pages the scraper publishes (BM25 retrieval)."""
