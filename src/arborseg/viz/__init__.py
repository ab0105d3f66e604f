"""Pictures: learning curves and error overlays (:mod:`.figures`), campaign plots (:mod:`.plots`), tree
pictures (:mod:`.treeplot`) and the static HTML report (:mod:`.report`)."""
